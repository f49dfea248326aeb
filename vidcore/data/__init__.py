"""Video data for vidcore's models: the PyAV video reader (`vidcore.data.video`) and the synthetic
video-QA set (`vidcore.data.video_qa`). Nothing heavy is imported here: import the submodules."""
