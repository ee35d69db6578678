"""The API's typed boundary: pydantic request and response models, one module per area, built from registry records."""
