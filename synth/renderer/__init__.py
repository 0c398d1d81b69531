"""posepipe.synth.renderer"""
