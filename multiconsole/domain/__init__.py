"""What a VM's display is: devices, enums and the rules about them. Pure, no I/O."""
