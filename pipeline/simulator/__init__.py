"""An OpenAI-compatible vision chat-completions server for tests, demos and benchmarks (`pipeline simulate`).

server.py answers; settings.py holds the knobs and counters; answers.py builds bodies and headers;
request.py reads requests; vision.py looks at images; stream.py writes SSE; limits.py enforces rate
limits; dialects.py plays real providers' quirks; assets.py serves test images; running.py runs it.
Control endpoints: GET /_sim/stats, POST /_sim/config, POST /_sim/reset.
"""

from pipeline.simulator.answers import image_key, retry_after_headers
from pipeline.simulator.running import SimulatorHandle, build_parser, main, serve_in_thread
from pipeline.simulator.server import Simulator
from pipeline.simulator.settings import SimulatorSettings
from pipeline.simulator.vision import count_usage

__all__ = ["Simulator", "SimulatorHandle", "SimulatorSettings", "build_parser", "count_usage", "image_key",
           "main", "retry_after_headers", "serve_in_thread"]
