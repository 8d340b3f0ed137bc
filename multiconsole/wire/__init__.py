"""The engine <-> host protocol: vmCreate parameters and VM stats, new and legacy forms.

Pure: no I/O, imports nothing of the agent or the engine.
"""
