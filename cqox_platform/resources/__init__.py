"""One ConfigurableResource per external system; the only code that opens connections."""
