"""emlab: the library behind the emergent-misalignment Snakemake workflow.

One module per concept; the Snakemake `script:` entry points in
workflow/scripts/ only read their inputs and call into here.
"""

__version__ = "0.1.0"
