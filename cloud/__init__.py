"""The cloud BMS service (later issue)."""
