"""The paper's transfer-learning experiments, a research driver outside the library:
``catalogue`` (tasks, curves, panels, the experiments), ``scales`` (how big, as data in
scales.yaml), ``runner``, ``analysis`` (the data savings), ``report`` and the CLI
(``python -m experiments NAME --out DIR [--scale small|gpu|paper]``)."""
