"""Model discovery, family detection, loading and the one owner of device memory."""
