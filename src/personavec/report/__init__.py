"""HTML reports and their plots."""
