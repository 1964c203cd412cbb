"""The review page (`pipeline report`): data.py reads the table, thumbs.py finds and shrinks images,
render.py fills the page (page/template.html, report.css, report.js), build.py writes it and is the command."""

from pipeline.report.build import DEFAULT_MAX_THUMBNAILS, ReportStats, build_parser, default_html_path, main, write_report
from pipeline.report.errors import ReportError
from pipeline.report.thumbs import thumbnail_jpeg

__all__ = ["DEFAULT_MAX_THUMBNAILS", "ReportError", "ReportStats", "build_parser", "default_html_path", "main",
           "thumbnail_jpeg", "write_report"]
