"""Helpers around state_tasks that production code never imports: the test harness."""
