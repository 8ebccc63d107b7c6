"""DICOMweb (PS3.18): the origin server's engine (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) and the client."""
