"""posepipe.synth.core"""
