"""medtune's driver: parse spaces, run studies on Ray Tune, read them back from MLflow."""
