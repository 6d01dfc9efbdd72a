"""``robots``: knows every robot on the broker from its announcements, and commands them for bus callers."""
