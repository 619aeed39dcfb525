"""msgfm: the msGFM multisensor geospatial foundation model pipeline.

The package is laid out the way data flows: ``msgfm.data`` (sources, readers, demo data,
tiling, loading) feeds the model and training code, whose results feed the tables.
Heavy libraries (torch, timm, mlflow) are imported only by the modules that need them, so
that a Snakemake job pays for what it uses.
"""

__version__ = "0.1.0"
