"""Pure HTTP rules: stdlib only, no I/O, no clock (time is always a parameter)."""
