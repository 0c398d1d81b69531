"""posepipe.synth"""
