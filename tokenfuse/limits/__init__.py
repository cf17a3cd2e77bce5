"""tokenfuse.limits"""
