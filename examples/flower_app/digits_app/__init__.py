"""AlignedFedAvg on Flower: four SuperNodes, each with a non-IID share of the digits."""
