"""From run folders to answers: the Arrow tables (`tables`), KD cells chosen on validation
(`cells`), paired statistics (`stats`), what compression bought (`cost_ratios`) and the
few-labels comparison (`few_labels`)."""
