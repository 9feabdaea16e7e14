"""Survey-scale scanning on Dask, the candidate gallery, and known-lens flags.

``scan`` (shards -> Parquet -> ranked catalogue), ``gallery.make_gallery`` (HTML + PNG mosaic),
``crossmatch.flag_known_lenses``. Dask, torch and pyarrow are imported inside the functions.
"""

from lensfinder.scan.scanning import ScanResult, scan

__all__ = ["ScanResult", "scan"]
