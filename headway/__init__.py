"""Headway: run long jobs from web forms and watch them live."""
