"""dicomweb"""
