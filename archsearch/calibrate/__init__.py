"""Calibration of the proxy: does a cheap training rank architectures as a longer one does, and above its noise?"""
