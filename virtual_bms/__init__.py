"""Virtual edge BMSs on top of a twin (later issue)."""
