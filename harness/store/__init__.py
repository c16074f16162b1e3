"""The store: content identities (sha256), safe file access inside a checkout, atomic writes, the one downloader and the Hugging Face Hub client. Nothing here knows what a model or a metric is."""
