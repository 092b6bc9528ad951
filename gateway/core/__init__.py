"""The pure domain core: no I/O libraries are imported below this package."""
