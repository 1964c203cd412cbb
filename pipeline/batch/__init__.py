"""Provider batch jobs (--batch): the same rows as online, half the price, answered within a day.

ledger.py records each batch beside the output before it goes further; packer.py fills batch files;
api.py speaks OpenAI's Files + Batches and Anthropic's Message Batches; collect.py turns results into
output rows; backend.py runs them in order; cli.py is `pipeline batch status|cancel|export|import`.
"""
