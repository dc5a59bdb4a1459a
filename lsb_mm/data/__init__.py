"""Reading what users bring: images, documents, corpus sources, training data, BEIR task folders and splits."""
