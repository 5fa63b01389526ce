"""Stage logic of synthface as plain functions (no prefect, no dvc): flows/ wraps them as Prefect tasks."""
