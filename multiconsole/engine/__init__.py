"""The engine: owns VM configuration and drives host agents through their client."""
