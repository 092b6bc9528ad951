"""polegw: telemetry gateway and operations back end for smart multi-function poles."""

__version__ = "0.1.0"
