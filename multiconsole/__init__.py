"""multiconsole: virtual machines with SPICE and VNC consoles side by side."""

__version__ = "0.1.0"
