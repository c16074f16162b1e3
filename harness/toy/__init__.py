"""The toy world: a tiny trained diffusers pipeline and classifier on procedural images (styles x
objects), so every suite, method, metric and attack runs offline on a CPU. Data: ``world``
(concepts, prompts, images), ``paths`` (asset folders), ``tokenizer``, ``classifier``; built on the
harness: ``model`` (the pipeline), ``train``, ``quality`` and ``submissions`` (``unlearn toy``)."""
