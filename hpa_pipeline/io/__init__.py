"""Reading raw channel images and writing/reading the pipeline's Zarr stores."""
