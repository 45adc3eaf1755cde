"""Worker-side code: the Huey queue, the progress reporter, the job runner and the job kinds."""
