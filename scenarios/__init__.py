"""SimPy scenarios of Pillar 1 and Pillar 2 that drive the twins (later issue)."""
