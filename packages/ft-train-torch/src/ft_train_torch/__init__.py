"""ft-train-torch: the PyTorch trainer."""
