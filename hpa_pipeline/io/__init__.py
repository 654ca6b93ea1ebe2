"""The files every stage reads and writes: raw channels, atomic files, Zarr stores, the image index, folds,
cell tables, label masks and predictions. Formats only: nothing here knows a stage."""
