"""posepipe.training"""
