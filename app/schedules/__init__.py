"""Scheduled re-analysis (DESIGN.md §2.4): schedules in the DB, a beat-triggered scan, report history with flags."""
