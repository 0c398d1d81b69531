"""posepipe.annotation"""
