"""Word lists of the built-in synthetic task (data only; see `synthetic.py`)."""

# fmt: off
ANIMALS = (
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "duck", "goose", "hen", "fox",
    "wolf", "bear", "deer", "rabbit", "mouse", "owl", "eagle", "frog", "snake", "lion",
    "tiger", "zebra", "camel", "whale", "shark", "seal", "otter", "bee", "ant",
)
TOOLS = (
    "hammer", "saw", "drill", "spade", "rake", "shovel", "wrench", "chisel", "ladder", "rope",
    "bucket", "brush", "needle", "scissors", "knife", "axe", "file", "clamp", "lever",
    "pulley",
)
FOODS = (
    "apple", "bread", "cheese", "rice", "bean", "carrot", "onion", "lemon", "grape", "melon",
    "peach", "pear", "plum", "honey", "butter", "soup", "cake", "pie", "egg", "milk",
)
THINGS = (
    "river", "stone", "cloud", "tree", "garden", "window", "door", "table", "chair", "lamp",
    "book", "letter", "candle", "mirror", "bridge", "tower", "road", "field", "forest", "hill",
    "lake", "island", "castle", "market", "school", "train", "boat", "kite", "drum", "bell",
    "coin", "key", "map", "box", "basket", "clock", "shoe", "hat", "coat", "ring",
)
# fmt: on
# Words used by the list families; every word is one of the categories above.
WORDS = ANIMALS + TOOLS + FOODS + THINGS
CATEGORIES = {"animals": ANIMALS, "tools": TOOLS, "foods": FOODS}

# fmt: off
NAMES = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate",
    "Leo", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Zoe",
    "Omar",
)
COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "brown", "grey",
    "pink", "silver",
)
OBJECTS = (
    "ball", "kite", "bike", "hat", "coat", "bag", "cup", "boat", "car", "lamp", "scarf",
    "umbrella", "book", "box",
)
PLACES = (
    "the old mill", "a small village", "the big city", "a harbour town", "the green valley",
    "a house by the lake", "the north tower", "a hut near the forest", "the market square",
    "a cabin in the hills", "the river port", "a quiet street",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
# fmt: on
