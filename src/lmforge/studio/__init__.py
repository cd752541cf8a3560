"""lmforge studio: the whole job in a browser (recipe, data, runs, comparison, chat, export), on Gradio."""
