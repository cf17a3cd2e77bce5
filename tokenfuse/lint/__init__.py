"""tokenfuse.lint"""
