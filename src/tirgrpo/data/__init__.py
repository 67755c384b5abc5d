"""Data: the example record and its readers, `prepare`, GSM8K-verify, tokenizers, prompt
templates, bundled files and named models, reader limits, and the prompts a run takes."""
