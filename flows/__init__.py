"""posepipe.flows"""
