"""asrq: train once, deploy many on-device speech recognizers."""

__version__ = "0.1.0"
