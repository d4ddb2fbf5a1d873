"""First Sip plugin runner."""
