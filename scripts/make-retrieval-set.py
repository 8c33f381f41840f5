#!/usr/bin/env python3
r"""Generate tests/data/retrieval_set.json: a small query/passage set, ranked by
sentence-transformers/all-MiniLM-L6-v2 through sentence-transformers itself, so
that zerobatch's dtypes (f32, bf16, int8; issue 8) can be compared by what they
do to retrieval: the top-10 passages of each query, against this reference and
against each other.

Not part of the build or CI; run by hand when the set must be redone. It needs
the same throwaway venv as scripts/make-reference.py (see its docstring: the
pinned sentence-transformers, transformers, tokenizers, torch, numpy):

    HF_HUB_OFFLINE=1 nice -n 15 /tmp/refvenv/bin/python scripts/make-retrieval-set.py \
        /work/main/models/all-MiniLM-L6-v2

Last run 2026-11-27 exactly so (Python 3.11.7, sentence-transformers 6.2.0,
transformers 5.24.0, tokenizers 0.23.3, torch 2.15.0+cu132, numpy 2.4.6; about
12 s on the CPU; the passages came out 53 to 167 tokens long). Running it
again gives the same file byte for byte.

Usage: make-retrieval-set.py [MODEL_DIR] [--output PATH] [--seed N]

MODEL_DIR defaults to models/all-MiniLM-L6-v2 and --output to
tests/data/retrieval_set.json, both relative to the repository root.

How the text is made (deterministic: random.Random(seed), seed 8 by default):
20 topics, each with a handful of hand-written factual sentences, the first of
which answers that topic's question. Each topic gives 5 passages of 3 to 7 of
its sentences (a seeded sample, kept in the written order), each 40 to 200
tokens with [CLS]/[SEP]; 1 to 3 of the 5 hold the answer sentence, the others do
not. Topics come in near pairs (coffee and tea, solar and wind power, vaccines
and antibiotics, volcanoes and earthquakes, ...) so that the wrong passages are
not all easy. The 100 passages are then shuffled. Each query is a question
worded apart from its answer (no copied phrases beyond the topic's nouns).

The file holds:
  generator               this script and the library versions
  model, model_sha256     the model and its model.safetensors hash
  seed                    the seed used
  queries                 20 question strings
  passages                100 passage strings
  query_topics            per query, its topic's name
  relevant                per query, the indices of the passages that hold its
                          answer sentence, ascending (1 to 3 each)
  passage_token_counts    per passage, ids with [CLS]/[SEP] (none truncated)
  reference_top10         per query, the 10 passage indices with the highest
                          cosine of model.encode(..., normalize_embeddings=True),
                          best first (ties by lower index)
  reference_scores_top10  the cosines of those 10, rounded to 7 significant
                          digits
No embeddings are stored: the tests compute them.
"""

import argparse
import json
import os
import random
import sys

from reference_common import round7, sha256_of

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSAGES_PER_TOPIC = 5
MIN_TOKENS, MAX_TOKENS = 40, 200

# (topic, question, [answer sentence, other sentences...])
TOPICS = [
    (
        "coffee",
        "How hot should the water be for brewing coffee?",
        [
            "Water just below the boil, somewhere between 90 and 96 degrees Celsius, pulls the most flavour out of ground coffee without scorching it.",
            "Beans begin to lose their aroma within a couple of weeks of roasting, so small bags bought often beat a large tin.",
            "A burr grinder produces particles of even size, which extract at the same rate and give a cleaner cup than a blade grinder.",
            "For a pour-over, most baristas start from about sixty grams of coffee per litre and adjust to taste.",
            "Espresso is made by forcing water through a tightly packed puck of fine grounds at around nine bars of pressure.",
            "Light roasts keep more of the fruity acidity of the bean, while dark roasts taste of chocolate and smoke.",
            "Coffee plants grow best at altitude in the tropics, where cool nights slow the ripening of the cherries.",
            "Stale or over-extracted coffee tastes bitter and hollow; under-extracted coffee tastes sour and thin.",
        ],
    ),
    (
        "tea",
        "Why does green tea turn bitter if you steep it too long?",
        [
            "Green tea releases tannins, catechins that taste harsh and astringent, the longer the leaves sit in hot water, so two or three minutes is usually enough.",
            "Black, green, white and oolong teas all come from the same plant, Camellia sinensis; they differ in how the leaves are processed.",
            "For black tea the leaves are rolled and left to oxidise fully before drying, which darkens them and deepens the flavour.",
            "Japanese green teas are steamed soon after picking, while many Chinese green teas are pan-fired in large woks.",
            "Loose leaves have room to unfurl in a pot, and good leaves can be infused two or three times.",
            "Herbal infusions such as peppermint or chamomile are not strictly tea, since they contain no leaves of the tea plant.",
            "A cup of black tea has roughly half the caffeine of a cup of filter coffee.",
        ],
    ),
    (
        "solar_power",
        "Do solar panels still produce electricity on cloudy days?",
        [
            "Photovoltaic panels keep generating under an overcast sky, although their output may drop to a tenth or a quarter of what they give in full sunshine.",
            "Most rooftop panels are made of crystalline silicon cells that convert around twenty percent of the sunlight falling on them into electricity.",
            "An inverter turns the direct current produced by the panels into the alternating current used by household appliances.",
            "Panels lose a little efficiency as they heat up, so a cold bright spring day can beat a hot summer afternoon.",
            "Manufacturers typically guarantee that a panel will still deliver eighty percent of its rated power after twenty-five years.",
            "In the northern hemisphere a roof facing south at an angle of thirty to forty degrees collects the most energy over a year.",
            "The price of solar modules has fallen by about ninety percent since 2010, making them one of the cheapest sources of new power.",
        ],
    ),
    (
        "wind_power",
        "At what wind speed do wind turbines shut down?",
        [
            "When gusts exceed about 25 metres per second, a turbine feathers its blades and locks the rotor to protect itself from damage.",
            "A modern onshore wind turbine starts turning and producing power at wind speeds of around three or four metres per second.",
            "Offshore turbines can be much larger than those on land, with rotors more than two hundred metres across.",
            "The power in the wind rises with the cube of its speed, so doubling the wind speed gives eight times as much energy.",
            "Turbines are spaced several rotor diameters apart, because each one leaves a slower, turbulent wake behind it.",
            "Wind farms produce more electricity in winter in much of Europe, when storms are frequent and demand is high.",
            "Blade tips can travel at more than three hundred kilometres per hour even when the rotor seems to turn slowly.",
        ],
    ),
    (
        "vaccines",
        "How does a vaccine teach the body to fight a disease?",
        [
            "A vaccine shows the immune system a harmless piece or weakened form of a germ, so that it builds antibodies and memory cells before a real infection arrives.",
            "Some vaccines need booster doses years later because the protection they give slowly fades.",
            "When enough people in a community are immune, a disease struggles to spread, which also shields those who cannot be vaccinated.",
            "Messenger RNA vaccines carry instructions that let cells make a viral protein for a short time before the instructions are broken down.",
            "A sore arm, mild fever or tiredness for a day or two after an injection is a normal sign that the immune system is responding.",
            "Smallpox, which once killed millions of people each year, was declared eradicated in 1980 after a worldwide vaccination campaign.",
            "Vaccines are tested in trials involving tens of thousands of volunteers before regulators approve them.",
        ],
    ),
    (
        "antibiotics",
        "Why shouldn't you stop taking antibiotics early or use them for a cold?",
        [
            "Misusing antibiotics, for example against viral illnesses they cannot touch or in half-finished courses, lets the hardiest bacteria survive and breeds resistant strains.",
            "Antibiotics kill bacteria or stop them multiplying, but they have no effect at all on viruses such as those behind colds and flu.",
            "Penicillin was discovered by Alexander Fleming in 1928, when mould contaminated one of his bacterial cultures.",
            "Broad-spectrum antibiotics also wipe out many of the helpful bacteria in the gut, which can cause diarrhoea.",
            "Resistant infections already kill more than a million people a year worldwide, according to recent estimates.",
            "Very few genuinely new classes of antibiotics have reached patients in the last few decades.",
            "Large amounts of antibiotics are given to farm animals, a practice many countries now restrict.",
        ],
    ),
    (
        "altitude",
        "What are the warning signs of altitude sickness when hiking?",
        [
            "Headache, nausea, dizziness and unusual fatigue above about 2,500 metres are the first symptoms of acute mountain sickness, and the safest response is to go down.",
            "Climbers are advised to gain no more than three to five hundred metres of sleeping altitude per day once they are high in the mountains.",
            "The air at the summit of Everest holds only about a third of the oxygen available at sea level.",
            "Drinking plenty of water and avoiding alcohol during the first days at altitude helps the body adjust.",
            "Some trekkers take acetazolamide, a prescription drug that speeds up acclimatisation.",
            "Fluid on the lungs or brain is a rare but life-threatening complication that needs immediate descent and medical care.",
            "People who live permanently in the Andes or on the Tibetan plateau have adapted to thin air over many generations.",
        ],
    ),
    (
        "sourdough",
        "What makes sourdough bread rise without commercial yeast?",
        [
            "A sourdough starter is a culture of wild yeasts and lactic acid bacteria living in flour and water, and its yeasts produce the carbon dioxide that lifts the dough.",
            "A starter must be fed with fresh flour and water regularly, usually once a day if it is kept at room temperature.",
            "The lactic and acetic acids made by the bacteria give the loaf its tangy flavour and help it keep longer.",
            "Long, slow fermentation in the refrigerator overnight develops a more complex taste.",
            "Bakers judge whether dough is ready by pressing it gently: a dent that springs back slowly means it is proofed.",
            "Baking inside a preheated cast-iron pot traps steam around the loaf and gives a crisp, shiny crust.",
            "Rye flour ferments quickly and is often used to get a new starter going.",
            "Cutting a shallow slash across the top lets the loaf expand in a controlled way in the oven.",
        ],
    ),
    (
        "index_funds",
        "Why do index funds usually beat actively managed funds over time?",
        [
            "Because they simply track a market index, index funds charge very low fees, and over decades those savings let them outperform most actively managed funds after costs.",
            "An index fund holds all or a representative sample of the shares in an index such as the S&P 500.",
            "Diversifying across hundreds of companies means that the failure of any one of them barely moves the value of the fund.",
            "Exchange-traded funds can be bought and sold during the trading day like ordinary shares.",
            "Reinvesting dividends rather than spending them greatly increases the final value of a long-term investment.",
            "Stock markets can fall by a third or more in a bad year, so money needed soon is better kept in cash.",
            "Investing a fixed amount every month, known as dollar-cost averaging, smooths out the price paid over time.",
        ],
    ),
    (
        "mortgages",
        "What is the difference between a fixed-rate and a variable-rate mortgage?",
        [
            "With a fixed-rate loan the interest rate and monthly payment stay the same for an agreed period, whereas a variable-rate loan moves up and down with the lender's benchmark rate.",
            "Lenders usually ask for a deposit of at least five to twenty percent of the purchase price of a home.",
            "Over a thirty-year term, the total interest paid on a mortgage can exceed the amount originally borrowed.",
            "Making small overpayments early in the loan shortens the term and saves a surprising amount of interest.",
            "Banks check a borrower's income, debts and credit history before deciding how much they will lend.",
            "Central banks raise interest rates to cool inflation, which quickly makes new home loans more expensive.",
            "Remortgaging means moving the loan to a new deal, often when an introductory rate comes to an end.",
        ],
    ),
    (
        "volcanoes",
        "Why are some volcanic eruptions explosive while others are gentle?",
        [
            "Thick, silica-rich magma traps gas until the pressure blasts it apart, while runny basalt lets gas escape easily and flows out as lava.",
            "Most volcanoes lie along the edges of tectonic plates, especially around the Pacific Ocean in the so-called Ring of Fire.",
            "Hawaii's volcanoes sit above a hot spot in the middle of the Pacific plate rather than at a plate boundary.",
            "Pyroclastic flows, avalanches of hot gas and ash, can race downhill at hundreds of kilometres per hour.",
            "The eruption of Tambora in 1815 cooled the planet so much that 1816 became known as the year without a summer.",
            "Volcanic soils are often very fertile, which is one reason people farm on the slopes of active volcanoes.",
            "Scientists watch for swelling of the ground, small earthquakes and changes in gas emissions before an eruption.",
        ],
    ),
    (
        "earthquakes",
        "What causes earthquakes?",
        [
            "Earthquakes happen when stress built up between slowly moving blocks of the Earth's crust is suddenly released as rock slips along a fault.",
            "The magnitude scale is logarithmic: each whole step corresponds to about thirty-two times more energy released.",
            "Buildings with flexible frames and base isolators ride out shaking far better than rigid brick structures.",
            "A large undersea earthquake can lift the sea floor and set off a tsunami that crosses an entire ocean.",
            "Seismometers record the fast primary waves first, followed by slower secondary waves and surface waves.",
            "Aftershocks can continue for months after a major quake, and some of them are strong enough to cause new damage.",
            "Japan's warning system can give people several seconds to take cover before strong shaking arrives.",
        ],
    ),
    (
        "honeybees",
        "How do honeybees tell each other where to find flowers?",
        [
            "A forager returning to the hive performs a waggle dance whose angle points toward the food relative to the sun and whose length tells the others how far away it is.",
            "A colony can contain fifty thousand workers in summer but only one egg-laying queen.",
            "Bees turn nectar into honey by adding enzymes and fanning it with their wings until most of the water evaporates.",
            "Worker bees born in summer live only five or six weeks, worn out by foraging.",
            "Pesticides, parasitic mites and the loss of wildflower meadows have all contributed to colony losses.",
            "Roughly a third of the food crops people eat depend at least partly on pollination by insects.",
            "Bees keep the centre of the hive at around thirty-five degrees Celsius to raise their brood.",
        ],
    ),
    (
        "bird_migration",
        "How do migrating birds find their way over such long distances?",
        [
            "Migratory birds navigate by combining several cues: the position of the sun and stars, the Earth's magnetic field and familiar landmarks such as coastlines and rivers.",
            "The Arctic tern flies from the Arctic to the Antarctic and back every year, a round trip of tens of thousands of kilometres.",
            "Many songbirds migrate at night, when the air is calmer and cooler and predators are fewer.",
            "Before setting off, some birds almost double their body weight by storing fat as fuel.",
            "Bar-tailed godwits have been tracked flying non-stop from Alaska to New Zealand in about ten days.",
            "Lights on tall buildings can confuse night-flying birds, and some cities switch them off during migration season.",
            "Warmer springs are causing some species to arrive at their breeding grounds earlier than they did fifty years ago.",
        ],
    ),
    (
        "passwords",
        "Is it safe to reuse the same password on different websites?",
        [
            "Reusing a password is dangerous because once one site leaks it, attackers try the same email and password combination on many other services.",
            "A password manager generates a long random password for every account and fills it in automatically.",
            "Two-factor authentication asks for a second proof, such as a code from an app or a hardware key, in addition to the password.",
            "Long passphrases made of several unrelated words are both hard to guess and easy to remember.",
            "Phishing emails imitate real companies to trick people into typing their credentials into a fake login page.",
            "Services should store passwords only as slow, salted hashes, never as plain text.",
            "Codes sent by text message are better than nothing but can be intercepted through SIM-swapping scams.",
        ],
    ),
    (
        "database_indexes",
        "Why does adding an index make database queries faster?",
        [
            "An index keeps a sorted structure, usually a B-tree, of a column's values with pointers to the rows, so the database can jump to matching rows instead of scanning the whole table.",
            "Every index must be updated on each insert, update and delete, so too many indexes slow down writes.",
            "A composite index on two columns helps queries that filter on the first column, or on both, but not on the second alone.",
            "The query planner uses statistics about the data to decide whether an index scan or a full table scan is cheaper.",
            "Running EXPLAIN before a slow query shows which plan the database chose and where the time goes.",
            "Indexes on columns with very few distinct values, such as a yes-or-no flag, rarely help.",
            "A covering index contains every column a query needs, so the table itself never has to be read.",
        ],
    ),
    (
        "ev_batteries",
        "How long do electric car batteries last before they need replacing?",
        [
            "Most electric car batteries keep well over seventy percent of their capacity after 150,000 to 300,000 kilometres, so many outlast the rest of the car.",
            "Lithium-ion cells degrade fastest when they are kept at full charge or left in very hot weather.",
            "Many drivers charge to eighty percent for daily use and save a full charge for long trips.",
            "Fast chargers can add several hundred kilometres of range in around half an hour.",
            "Cold weather reduces range noticeably, partly because energy is needed to heat the cabin and the battery.",
            "Lithium iron phosphate batteries contain no cobalt and tolerate many more charging cycles, at the cost of some energy density.",
            "Old car batteries can be reused for storing energy in buildings before their materials are recycled.",
        ],
    ),
    (
        "roman_aqueducts",
        "How did Roman aqueducts carry water into cities without pumps?",
        [
            "Roman engineers laid aqueducts on a very slight, steady downhill gradient, often less than a metre per kilometre, so that gravity alone moved the water for dozens of kilometres.",
            "Most of an aqueduct's length ran underground in channels, and only a small part was carried on the famous arches.",
            "At its height, ancient Rome was supplied by eleven aqueducts bringing water from the surrounding hills.",
            "The water fed public fountains, baths and latrines, while wealthy households paid for private connections.",
            "Settling tanks along the route allowed sand and silt to drop out before the water reached the city.",
            "The Pont du Gard in southern France, a three-tiered bridge, is one of the best preserved sections.",
            "Pipes distributing water inside cities were often made of lead, which gave us the word plumbing.",
        ],
    ),
    (
        "marathon",
        "How should beginners train for their first marathon?",
        [
            "Most beginner plans build up over about four to five months, adding distance to one long weekly run while keeping the other runs short and easy.",
            "Runners usually taper for the last two or three weeks, cutting their mileage so that their legs are fresh on race day.",
            "During a race lasting several hours, the body needs carbohydrates, often taken as gels or sports drinks every half hour or so.",
            "Hitting the wall around thirty kilometres happens when the muscles run out of stored glycogen.",
            "Increasing weekly distance by no more than about ten percent at a time lowers the risk of injury.",
            "The marathon distance of 42.195 kilometres was fixed after the 1908 London Olympics.",
            "Comfortable shoes that have been worn in during training matter more than the latest model.",
        ],
    ),
    (
        "houseplants",
        "How often should I water my indoor plants?",
        [
            "Rather than watering on a fixed schedule, check the soil with a finger and water only when the top few centimetres feel dry, since most houseplants die from too much water, not too little.",
            "Pots need drainage holes so that surplus water can escape instead of rotting the roots.",
            "Plants grow slowly in winter, when the days are short, and need less water and no fertiliser.",
            "Yellowing lower leaves often signal overwatering, while crispy brown edges suggest dry air or underwatering.",
            "Succulents and cacti store water in their thick leaves and stems and prefer bright light.",
            "Many popular houseplants, such as the monstera and the peace lily, come from the floor of tropical rainforests.",
            "Repotting into a container one size larger every year or two gives the roots fresh soil.",
        ],
    ),
]


def make_passages(rng, count_tokens):
    """Returns (passages, topic of each, holds-the-answer flag of each), shuffled."""
    items = []
    for topic, _question, sentences in TOPICS:
        answer, others = sentences[0], sentences[1:]
        n_with_answer = rng.randint(1, 3)
        made = set()
        for j in range(PASSAGES_PER_TOPIC):
            with_answer = j < n_with_answer
            for _attempt in range(1000):
                k = rng.randint(3, min(7, len(others)))  # sentences in the passage
                if with_answer:
                    picked = sorted(rng.sample(range(len(others)), k - 1))
                    # The answer (-1) at a seeded place among the others, not always first.
                    pos = rng.randint(0, len(picked))
                    order = picked[:pos] + [-1] + picked[pos:]
                else:
                    order = sorted(rng.sample(range(len(others)), k))
                text = " ".join(answer if i < 0 else others[i] for i in order)
                n = count_tokens(text)
                if MIN_TOKENS <= n <= MAX_TOKENS and text not in made:
                    break
            else:
                sys.exit(f"{topic}: no passage of {MIN_TOKENS}-{MAX_TOKENS} tokens after 1000 tries")
            made.add(text)
            items.append((text, topic, with_answer))
    rng.shuffle(items)
    return [t for t, _, _ in items], [tp for _, tp, _ in items], [a for _, _, a in items]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", default=os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "tests", "data", "retrieval_set.json"))
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    torch.manual_seed(0)

    assert len(TOPICS) == 20 and len({t for t, _, _ in TOPICS}) == 20
    sha = sha256_of(os.path.join(args.model_dir, "model.safetensors"))
    if sha != MODEL_SHA256:
        sys.exit(f"model.safetensors sha256 is {sha}, expected {MODEL_SHA256}")
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    tokenizer = model.tokenizer

    def count_tokens(text):
        return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    rng = random.Random(args.seed)
    passages, topics_of, has_answer = make_passages(rng, count_tokens)
    queries = [q for _, q, _ in TOPICS]
    query_topics = [t for t, _, _ in TOPICS]
    relevant = [
        [i for i, (tp, a) in enumerate(zip(topics_of, has_answer)) if tp == t and a] for t in query_topics
    ]
    assert len(passages) == 100 and len(set(passages)) == 100
    assert all(1 <= len(r) <= 3 for r in relevant)
    token_counts = [count_tokens(p) for p in passages]
    assert all(MIN_TOKENS <= n <= MAX_TOKENS for n in token_counts)
    assert max(count_tokens(q) for q in queries) <= model.max_seq_length

    def encode(texts):
        # One at a time, as make-reference.py does, so that no padding enters the numbers.
        with torch.no_grad():
            return model.encode(
                texts,
                batch_size=1,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float64)

    q = encode(queries)
    p = encode(passages)
    scores = q @ p.T
    top10, top10_scores = [], []
    for i in range(len(queries)):
        order = sorted(range(len(passages)), key=lambda j: (-scores[i, j], j))[:10]
        top10.append(order)
        top10_scores.append([round7(scores[i, j]) for j in order])

    # How good is the set? Said on stderr, for whoever regenerates it.
    hits1 = sum(top10[i][0] in relevant[i] for i in range(len(queries)))
    found = sum(all(r in top10[i] for r in relevant[i]) for i in range(len(queries)))
    gaps = [top10_scores[i][k] - top10_scores[i][k + 1] for i in range(len(queries)) for k in range(9)]
    print(
        f"passage tokens {min(token_counts)}-{max(token_counts)}; top-1 relevant for {hits1}/20 queries; "
        f"all relevant in top 10 for {found}/20; smallest gap between neighbours in a top 10 {min(gaps):.2e}",
        file=sys.stderr,
    )

    out = {
        "generator": (
            f"scripts/make-retrieval-set.py (seed {args.seed}): sentence-transformers "
            f"{sentence_transformers.__version__}, transformers {transformers.__version__}, "
            f"torch {torch.__version__}"
        ),
        "model": MODEL_ID,
        "model_sha256": sha,
        "seed": args.seed,
        "queries": queries,
        "passages": passages,
        "query_topics": query_topics,
        "relevant": relevant,
        "passage_token_counts": token_counts,
        "reference_top10": top10,
        "reference_scores_top10": top10_scores,
    }
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    # One key per line, one passage per line: small diffs when the set is redone.
    lines = ["{"]
    keys = list(out)
    for n, k in enumerate(keys):
        v = out[k]
        comma = "," if n + 1 < len(keys) else ""
        if isinstance(v, list):
            lines.append(f"{dump(k)}:[")
            lines += ["  " + dump(x) + ("," if m + 1 < len(v) else "") for m, x in enumerate(v)]
            lines.append("]" + comma)
        else:
            lines.append(f"{dump(k)}:{dump(v)}{comma}")
    lines.append("}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    json.load(open(tmp, encoding="utf-8"))  # must parse
    os.replace(tmp, args.output)
    print(f"wrote {len(queries)} queries and {len(passages)} passages to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
